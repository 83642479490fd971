"""Vision-language models: loading, image inputs and token groups (analyses build on these).

* :mod:`interp.vlm.inputs`: ``tokenize(model, texts, images=...)`` -> :class:`~interp.vlm.inputs.VisionBatch`
  (input ids, ``pixel_values``, image-token positions), image files and arrays, and the scope
  that feeds the images to every forward pass (so hooks, ``collect`` and the engine see them).
* :mod:`interp.vlm.groups`: token groups (image, text, last; early / object / late visual tokens
  of an object's box) as positions.
* :mod:`interp.vlm.toys`: the tiny random VLMs ``toy:llava`` and ``toy:gemma3vl``.
* :mod:`interp.vlm.scenes`, :mod:`interp.vlm.train`: seeded synthetic scenes with their ground truth, and the
  VLM trained here on them (``data/toy/vlm``).
* Analyses (issue 17): :mod:`interp.vlm.sinks` (visual sinks, image-centric heads, VAR),
  :mod:`interp.vlm.fcct` (cross-modal causal tracing, IRI), :mod:`interp.vlm.notice` (NOTICE patching),
  :mod:`interp.vlm.vhd` (VHD, T-VHD, VHR); :mod:`interp.vlm.plots` draws them over the image grid.

Nothing is imported here at import time.
"""
