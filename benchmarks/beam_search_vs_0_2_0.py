"""The paper's beam search (0.3.0) against 0.2.0's, best-path score on random step tables.

0.2.0 let live paths push finished ones out of the K slots of one top_k. This reads 0.2.0's
cnnrnn_tf/models/beam_search.py from git (commit 08e618f) and compares the best path's
log-probability of both on the same random tables (2,000 problems per row, 7-9 tokens, 3-4
steps). Run from a clone: ``python benchmarks/beam_search_vs_0_2_0.py`` (about 20 s).
"""
import importlib.util
import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf

from cnnrnn_tf.models.beam_search import beam_search as new_search

OLD_COMMIT = "08e618f"
M, MUL, END = 211, 31, 0
PROBLEMS = 2000


def old_search_fn():
    source = subprocess.run(["git", "show", f"{OLD_COMMIT}:cnnrnn_tf/models/beam_search.py"],
                            capture_output=True, text=True, check=True).stdout
    path = tempfile.NamedTemporaryFile("w", suffix="_beam_0_2_0.py", delete=False).name
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("beam_0_2_0", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.beam_search


def step_for(tables):
    """Logits from a per-problem table row chosen by a hash of the path so far."""
    tables = tf.constant(tables)

    def step(tokens, state):
        problem, code = state
        code = (code * MUL + tokens + 1) % M
        return tf.gather_nd(tables, tf.stack([problem, code], 1)), (problem, code)

    return step


def main():
    old_search = old_search_fn()
    print("| tokens | steps | beam | new higher | new lower | equal | largest gain |")
    print("|---|---|---|---|---|---|---|")
    for num_tokens in (7, 8, 9):
        for steps in (3, 4):
            rng = np.random.RandomState(1000 * num_tokens + steps)
            tables = rng.randn(PROBLEMS, M, num_tokens) * rng.uniform(0.5, 3.0, (PROBLEMS, 1, 1))
            tables[..., END] += rng.uniform(-3.0, 1.0, (PROBLEMS, 1))
            tables = tables.astype(np.float32)
            init = (tf.range(PROBLEMS), tf.zeros([PROBLEMS], tf.int32))
            for beam in (1, 2, 3, 4):
                kw = dict(beam_size=beam, max_length=steps)
                old = old_search(step_for(tables), init, PROBLEMS, num_tokens, **kw)["log_prob"]
                new = new_search(step_for(tables), init, PROBLEMS, num_tokens, **kw)["log_prob"]
                d = new.numpy() - old.numpy()
                print(f"| {num_tokens} | {steps} | {beam} | {(d > 1e-5).mean():.1%} | "
                      f"{(d < -1e-5).mean():.1%} | {(abs(d) <= 1e-5).mean():.1%} | {d.max():.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
