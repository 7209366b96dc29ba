"""Experiments: a grid of flagfiles x seeds and its results.

    runner.py    plan (every flagfile x seed resolved up front), run (resumable), collect, write outputs
    tables.py    the results table (Markdown + CSV; mean ± std, the seed study's figures, paired differences)
    plots.py     MTL-vs-STL bars, mean learning curves
    __main__.py  the `python -m mtl_keras.experiments` program
"""
