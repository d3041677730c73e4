"""polyfocal quick start: train a tiny MLP on an imbalanced synthetic problem with several losses (CPU, seconds)."""

import torch
import torch.nn.functional as F

import polyfocal

torch.manual_seed(0)
COUNTS = [800, 150, 40, 10]  # class 0 dominates, class 3 is rare
C, D, STEPS = len(COUNTS), 8, 60
means = 1.5 * torch.randn(C, D)
y = torch.cat([torch.full((n,), c) for c, n in enumerate(COUNTS)])
x = means[y] + torch.randn(len(y), D)

# polyfocal.cross_entropy gives the numbers of torch's, weight / ignore_index / label smoothing included.
logits, w = torch.randn(16, C), torch.rand(C)
target = torch.randint(0, C, (16,))
target[::5] = -100
same = torch.allclose(
    polyfocal.cross_entropy(logits, target, w, label_smoothing=0.1),
    F.cross_entropy(logits, target, w, label_smoothing=0.1),
)
print(f"polyfocal.cross_entropy == F.cross_entropy: {same}")
assert same

alpha = polyfocal.class_balanced_alpha(COUNTS, beta=0.999)  # Cui et al. 2019, sums to C
bg = y.clone() - 1  # sigmoid head: C - 1 foreground logits; class 0 becomes background ...
bg[y == 0] = C - 1  # ... i.e. index C - 1 = number of logits (an all-zero one-hot row)
runs = {
    "cross_entropy": (C, lambda out: polyfocal.cross_entropy(out, y)),
    "poly1_cross_entropy eps=2": (C, lambda out: polyfocal.poly1_cross_entropy(out, y, epsilon=2.0)),
    "softmax_focal_loss g=2": (C, lambda out: polyfocal.softmax_focal_loss(out, y, gamma=2.0)),
    "softmax_focal g=2 cb-alpha": (C, lambda out: polyfocal.softmax_focal_loss(out, y, gamma=2.0, alpha=alpha)),
    "sigmoid_focal_loss bg=idx C": (C - 1, lambda out: polyfocal.sigmoid_focal_loss(out, bg, gamma=2.0, alpha=0.25)),
}


def predict(out: torch.Tensor) -> torch.Tensor:
    if out.shape[1] == C:  # softmax head
        return out.argmax(1)
    score, cls = out.sigmoid().max(1)  # sigmoid head: background unless some class fires
    return torch.where(score > 0.5, cls + 1, 0)


# Loss values are on different scales and not comparable across losses; accuracies are on the training set.
for name, (outputs, loss_fn) in runs.items():
    torch.manual_seed(1)  # same initialisation for every loss
    model = torch.nn.Sequential(torch.nn.Linear(D, 32), torch.nn.ReLU(), torch.nn.Linear(32, outputs))
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(STEPS):
        opt.zero_grad()
        loss = loss_fn(model(x))
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = predict(model(x))
    acc = (pred == y).float().mean().item()
    recall = [(pred[y == c] == c).float().mean().item() for c in range(C)]
    print(f"{name:28s} final loss {loss.item():.4f}  train acc {acc:.3f}  balanced acc {sum(recall) / C:.3f}")
