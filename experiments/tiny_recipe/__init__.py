"""How the tiny base (jobs/assets/tiny-base) was made and what was learnt on the way (README.md here).

Scene generators (varied_scenes, drills, transfer_sets), the refresh of a base on pooled sets
(refresh_base), the one recipe definition (recipe) and the command that runs it (rebuild_base).
"""
