"""Vision-language models: synthetic scenes and the VLM trained here (:mod:`interp.vlm.scenes`,
:mod:`interp.vlm.train`)."""
