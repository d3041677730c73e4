"""Hugging Face integration (:mod:`polyfocal.hf`) on tiny models built from configs in code (nothing downloaded):
patched vs unpatched loss and gradients, ``Trainer`` with gradient accumulation, eval / generate unchanged, and
``loss_function`` as a ``compute_loss_func``."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

import polyfocal  # noqa: E402
from polyfocal import hf  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")
VOCAB = 97


def _llama(tie=False, seed=0):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tie,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).float()


def _gemma2(seed=0):
    torch.manual_seed(seed)
    config = transformers.Gemma2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=64, final_logit_softcapping=5.0,
    )  # fmt: skip
    return transformers.Gemma2ForCausalLM(config).float()


def _batch(seed=1, b=3, t=9):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (b, t), generator=gen)
    labels = ids.clone()
    labels[0, :4] = -100  # a prompt
    labels[2, 6:] = -100  # padding
    mask = torch.ones(b, t, dtype=torch.long)
    mask[2, 6:] = 0
    return ids, labels, mask


def _loss_and_grads(model, ids, labels, mask, **kw):
    model.zero_grad()
    out = model(input_ids=ids, attention_mask=mask, labels=labels, **kw)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("factory", [_llama, lambda: _llama(tie=True), _gemma2], ids=["llama", "llama_tied", "gemma2"])
def test_patched_matches_unpatched(factory):
    """float32: the patched training forward gives the unpatched model's loss and gradients (Gemma 2: its
    final_logit_softcapping goes to softcap), and returns logits=None."""
    model = factory().train()
    ids, labels, mask = _batch()
    ref, ref_grads = _loss_and_grads(model, ids, labels, mask)
    assert ref.logits is not None
    hf.patch_causal_lm(model, chunk_size=5)
    got, grads = _loss_and_grads(model, ids, labels, mask)
    assert got.logits is None
    torch.testing.assert_close(got.loss, ref.loss, atol=1e-6, rtol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], atol=1e-6, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    hf.unpatch(model)
    again, _ = _loss_and_grads(model, ids, labels, mask)
    assert again.logits is not None


def test_softcap_taken_from_config():
    model = _gemma2()
    hf.patch_causal_lm(model)
    assert getattr(model, hf._ATTR)["softcap"] == 5.0
    hf.patch_causal_lm(model, softcap=7.0)
    assert getattr(model, hf._ATTR)["softcap"] == 7.0


def test_shift_labels_and_num_items():
    """shift_labels used as given; num_items_in_batch divides the summed loss (ForCausalLMLoss's rule)."""
    model = _llama().train()
    ids, labels, mask = _batch()
    shift = F.pad(labels, (0, 1), value=-100)[..., 1:].contiguous()
    kw = {"attention_mask": mask, "shift_labels": shift, "labels": labels, "num_items_in_batch": torch.tensor(40)}
    ref = model(input_ids=ids, **kw)
    hf.patch_causal_lm(model)
    got = model(input_ids=ids, **kw)
    torch.testing.assert_close(got.loss, ref.loss, atol=1e-6, rtol=1e-6)
    plain = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert not torch.allclose(plain.loss, got.loss)  # the mean over 21 tokens, not sum / 40


def test_focal_options_reach_the_loss():
    """A patched focal loss equals softmax_focal_loss on the unpatched logits (shifted)."""
    model = _llama().train()
    ids, labels, mask = _batch()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    shift = F.pad(labels, (0, 1), value=-100)[..., 1:]
    expected = polyfocal.poly_loss(logits.reshape(-1, VOCAB), shift.reshape(-1), gamma=2.0, epsilon=1.0, z_loss=1e-3)
    hf.patch_causal_lm(model, gamma=2.0, epsilon=1.0, z_loss=1e-3)
    got = model(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(got.loss, expected, atol=1e-5, rtol=1e-5)


def test_eval_and_generate_unchanged():
    model = _llama()
    ids, labels, mask = _batch()
    model.eval()
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, labels=labels)
        ref_gen = model.generate(ids[:1], max_new_tokens=4, do_sample=False)
    hf.patch_causal_lm(model, gamma=2.0)
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask, labels=labels)
        gen = model.generate(ids[:1], max_new_tokens=4, do_sample=False)
    assert got.logits is not None
    torch.testing.assert_close(got.logits, ref.logits)
    torch.testing.assert_close(got.loss, ref.loss)
    assert torch.equal(gen, ref_gen)
    model.train()
    no_labels = model(input_ids=ids, attention_mask=mask)
    assert no_labels.logits is not None and no_labels.loss is None


def test_patch_errors():
    with pytest.raises(TypeError, match="causal-LM"):
        hf.patch_causal_lm(torch.nn.Linear(2, 3))
    with pytest.raises(ValueError, match="gamma"):
        hf.patch_causal_lm(_llama(), gamma=-1.0)
    with pytest.raises(TypeError, match="reduction"):
        hf.patch_causal_lm(_llama(), reduction="sum")
    with pytest.raises(ValueError, match="softcap"):
        hf.patch_causal_lm(_llama(), softcap=-2.0)


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n=8, t=10):
        gen = torch.Generator().manual_seed(3)
        self.items = []
        for i in range(n):
            ids = torch.randint(0, VOCAB, (t,), generator=gen)
            labels = ids.clone()
            labels[: 1 + i % 5] = -100  # prompts of different lengths: num_items_in_batch differs per micro-batch
            self.items.append({"input_ids": ids, "labels": labels, "attention_mask": torch.ones(t, dtype=torch.long)})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _train(model, tmp_path, **kw):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=2,
        learning_rate=1e-2, report_to=[], use_cpu=True, save_strategy="no", logging_steps=1, seed=0,
        dataloader_num_workers=0, disable_tqdm=True,
    )  # fmt: skip
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_Tokens(), **kw)
    trainer.train()
    return trainer


def test_trainer_gradient_accumulation(tmp_path):
    """Two Trainer steps with gradient_accumulation_steps=2 (the num_items_in_batch path): the patched model
    ends with the unpatched model's parameters and logged losses."""
    ref_model = _llama()
    model = copy.deepcopy(ref_model)
    ref = _train(ref_model, tmp_path / "ref")
    hf.patch_causal_lm(model, chunk_size=7)
    got = _train(model, tmp_path / "fused")
    assert got.model_accepts_loss_kwargs
    ref_losses = [r["loss"] for r in ref.state.log_history if "loss" in r]
    losses = [r["loss"] for r in got.state.log_history if "loss" in r]
    assert len(losses) == 2
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), atol=1e-5, rtol=1e-5)
    for (name, p), (_, q) in zip(model.named_parameters(), ref_model.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


# ------------------------------------------------------------------------------------------ loss_function


def _bert(num_labels=3):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        num_labels=num_labels, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return transformers.BertForSequenceClassification(config)


COUNTS = [90, 9, 1]


@pytest.mark.parametrize(
    ("spec", "kw", "expected"),
    [
        ("ce", {}, lambda x, y: F.cross_entropy(x, y)),
        ("focal", {}, lambda x, y: polyfocal.softmax_focal_loss(x, y, gamma=2.0)),
        ("poly1", {}, lambda x, y: polyfocal.poly1_cross_entropy(x, y)),
        ("la", {"class_counts": COUNTS}, lambda x, y: polyfocal.logit_adjusted_loss(x, y, prior=COUNTS)),
        ("ldam", {"class_counts": COUNTS, "logit_scale": 10.0},
         lambda x, y: polyfocal.ldam_loss(x, y, margin=polyfocal.ldam_margins(COUNTS), logit_scale=10.0)),
        ("focal", {"class_counts": COUNTS, "alpha": "balanced"},
         lambda x, y: polyfocal.softmax_focal_loss(x, y, alpha=polyfocal.class_balanced_alpha(COUNTS))),
    ],
)  # fmt: skip
def test_loss_function_sequence_classification(spec, kw, expected):
    model = _bert()
    gen = torch.Generator().manual_seed(4)
    ids = torch.randint(0, 50, (6, 7), generator=gen)
    labels = torch.tensor([0, 0, 1, 2, 0, 1])
    out = model(input_ids=ids)
    loss = hf.loss_function(spec, **kw)(out, labels)
    torch.testing.assert_close(loss, expected(out.logits, labels))
    summed = hf.loss_function(spec, **kw)(out, labels, num_items_in_batch=torch.tensor(4))
    if spec in ("ce", "focal", "poly1", "la") and "alpha" not in kw:  # unweighted: sum / 4 = mean * 6 / 4
        torch.testing.assert_close(summed, loss * 6 / 4)


def test_loss_function_token_classification_ignores():
    logits = torch.randn(2, 5, 4)
    labels = torch.tensor([[0, 1, -100, 3, 2], [-100, -100, 1, 1, 0]])
    out = {"logits": logits}
    got = hf.loss_function("focal", gamma=1.0)(out, labels)
    torch.testing.assert_close(got, polyfocal.softmax_focal_loss(logits.reshape(-1, 4), labels.reshape(-1), gamma=1.0))


def test_loss_function_in_trainer(tmp_path):
    """compute_loss_func: a Trainer step with the focal loss equals a manual step."""
    model = _bert()
    ref = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(5)
    data = [{"input_ids": torch.randint(0, 50, (7,), generator=gen), "labels": torch.tensor(i % 3)} for i in range(4)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=1, learning_rate=0.1, report_to=[],
        use_cpu=True, save_strategy="no", seed=0, optim="sgd", disable_tqdm=True, lr_scheduler_type="constant",
    )  # fmt: skip
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data,
                                   compute_loss_func=hf.loss_function("focal"))  # fmt: skip
    trainer.train()
    ref.train()
    batch = transformers.default_data_collator(data)
    order = list(iter(trainer.get_train_dataloader().sampler))
    assert sorted(order) == [0, 1, 2, 3]
    loss = polyfocal.softmax_focal_loss(ref(input_ids=batch["input_ids"]).logits, batch["labels"])
    loss.backward()
    with torch.no_grad():
        for p in ref.parameters():
            if p.grad is not None:
                p -= 0.1 * p.grad
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


def test_loss_function_errors():
    with pytest.raises(ValueError, match="spec"):
        hf.loss_function("dice")
    with pytest.raises(ValueError, match="class_counts"):
        hf.loss_function("la")
    with pytest.raises(ValueError, match="balanced"):
        hf.loss_function("focal", alpha="inverse", class_counts=COUNTS)
    loss = hf.loss_function("ce")
    with pytest.raises(TypeError, match="class-index"):
        loss({"logits": torch.randn(3, 2)}, torch.rand(3, 2))
    with pytest.raises(ValueError, match="labels of shape"):
        loss({"logits": torch.randn(3, 2)}, torch.zeros(4, dtype=torch.long))
