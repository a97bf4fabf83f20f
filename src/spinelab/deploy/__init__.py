"""Deployment: self-describing model packages (``package``, ``manifest``, ``model_card``) and their ONNX export
(``onnx_export``); ``spinelab.infer.onnx_runtime`` runs them. A package is a run folder cut to what inference
reads plus ``manifest.json`` and ``MODEL_CARD.md``, so everything that loads a run folder loads a package."""
