"""The offline benchmark of Evolver against the merging methods and references (issue 5): python -m bench.run."""
