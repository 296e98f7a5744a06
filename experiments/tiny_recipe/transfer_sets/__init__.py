"""Three synthetic sets unlike the demo's scenes, to score how the tiny recipe and base transfer.

grid_scenes (a 3x3 grid), free_scenes (free placement, relations) and sealed_scenes (written blind):
each writes a folder `python -m jobs.demo --data` trains and scores on. None of them is in the
tiny base's recipe.
"""
