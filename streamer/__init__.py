"""tickcast streamer: exchange trades in, 1-minute bars and quantile forecasts out."""

__version__ = "0.1.0"
