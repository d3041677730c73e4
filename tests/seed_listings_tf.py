"""Seed 000's TensorFlow listings (PolyLoss paper, Leng et al., ICLR 2022), transcribed in TensorFlow.

The reference that ``polyfocal.keras.poly1_cross_entropy`` / ``poly1_focal_loss`` must match in real TF
(values and ``tf.GradientTape`` gradients; ``tests/keras_checks_tf.py``).  Independent of polyfocal on
purpose, and of torch: it runs where torch is unimportable.  Same math as the listings, op for op
(``tf.nn.softmax_cross_entropy_with_logits`` / ``tf.nn.sigmoid_cross_entropy_with_logits`` for the CE
terms, ``**`` and ``tf.math.pow`` for the powers, ``alpha < 0`` disabling the alpha balance, the batch
mean of every element); only the local names differ.

TensorFlow is imported inside the functions: ``pytest --doctest-modules`` imports every module under
``tests/``, also where TensorFlow is not installed.
"""

from __future__ import annotations


def poly1_cross_entropy_tf(epsilon: float = 1.0):
    """``fn(y_true, y_pred)``: mean over the batch of ``CE + epsilon (1 - p_t)``; ``y_pred`` logits."""
    import tensorflow as tf

    def loss_fn(labels, logits):
        p_t = tf.reduce_sum(labels * tf.nn.softmax(logits), axis=-1)  # [batch]
        xent = tf.nn.softmax_cross_entropy_with_logits(labels, logits)  # [batch]
        return tf.reduce_mean(xent + epsilon * (1 - p_t))

    return loss_fn


def poly1_focal_loss_tf(gamma: float = 2.0, epsilon: float = 1.0, alpha: float = 0.25):
    """``fn(y_true, y_pred)``: element mean of ``alpha_t (1 - p_t)^gamma BCE + epsilon (1 - p_t)^(gamma + 1)``."""
    import tensorflow as tf

    def loss_fn(labels, logits):
        prob = tf.math.sigmoid(logits)
        bce = tf.nn.sigmoid_cross_entropy_with_logits(labels, logits)
        p_t = labels * prob + (1 - labels) * (1 - prob)
        focal = bce * ((1 - p_t) ** gamma)
        if alpha >= 0:
            focal = (alpha * labels + (1 - alpha) * (1 - labels)) * focal
        return tf.reduce_mean(focal + epsilon * tf.math.pow(1 - p_t, gamma + 1))

    return loss_fn
