"""Evaluation: scoring a model on a split (:mod:`.evaluate`), the HTML/PNG report
(:mod:`.report`) and inference speed (:mod:`.speed`)."""
