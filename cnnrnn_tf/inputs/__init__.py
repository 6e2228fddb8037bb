"""Inputs: image decoding and augmentation (:mod:`.images`), the in-graph preprocessor
(:mod:`.preprocessor`), the tf.data pipeline (:mod:`.dataset`) and frozen-backbone features
(:mod:`.features`)."""
