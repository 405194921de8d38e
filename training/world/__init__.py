"""The synthetic AVA world: `avaserve make-world` writes it, `avaserve world-preview` shows it.

classes.py (AVA ids and the long-term rule) -> figures.py (articulated figures and their
motion programs) -> scenario.py (the seeded script of a video and its keyframe labels) ->
render.py (pixels and H.264) -> generate.py (a whole world dir) -> card.py, preview.py.
"""
