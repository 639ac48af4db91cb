"""Hugging Face interop: export a run as a transformers checkpoint, import one back, generate.

Nothing here is imported by `import layerwise`: transformers and safetensors (the `hf` extra)
are needed only by the commands that use them, and are imported inside those modules.
"""
