"""What each layer does and how a profile changes it: `layerwise analyze`.

One pass over a run's fixed validation windows records every block's residual stream and its
attention and FFN updates; the modules here turn those into the logit lens (lens), layer
importance (importance), CKA (cka), update ratios and geometry (geometry), attention entropy
(attention), figures (figures) and words (summary). `runner` drives them, `outputs` writes a
directory, `comparison` does it for a `layerwise compare` output.
"""

from layerwise.analysis.comparison import analyze_comparison
from layerwise.analysis.outputs import AnalysisFiles, analyze, write_analysis
from layerwise.analysis.runner import AnalysisOptions, Pair, analyze_model, analyze_runs

__all__ = [
    "AnalysisFiles",
    "AnalysisOptions",
    "Pair",
    "analyze",
    "analyze_comparison",
    "analyze_model",
    "analyze_runs",
    "write_analysis",
]
