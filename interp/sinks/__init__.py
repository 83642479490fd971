"""Attention sinks, massive activations, secondary sinks, dormant heads, interventions.

Every statistic is streamed from hooks (no attention pattern is stored beyond one
layer of one batch) and returned as tidy :class:`~interp.results.Result` tables.
Definitions and defaults: METHODS.md sections 4 and 5.
"""

from interp.sinks.analysis import AnalysisConfig, analyze
from interp.sinks.dormant import DormancyConfig, dormant_heads, extreme_tokens
from interp.sinks.interventions import (InterventionConfig, act_calibrate, act_calibrated, interventions,
                                        massive_mean, massive_set, next_token_loss, select_act_heads, text_windows)
from interp.sinks.massive import MassiveConfig, massive_activations
from interp.sinks.secondary import SecondaryConfig, secondary_sinks
from interp.sinks.stats import SinkConfig, alpha_from_pattern, sink_scores

__all__ = ["AnalysisConfig", "analyze", "SinkConfig", "sink_scores", "alpha_from_pattern", "MassiveConfig",
           "massive_activations", "SecondaryConfig", "secondary_sinks", "DormancyConfig", "dormant_heads",
           "extreme_tokens", "InterventionConfig", "act_calibrate", "act_calibrated", "select_act_heads",
           "massive_set", "massive_mean", "next_token_loss", "text_windows", "interventions"]
