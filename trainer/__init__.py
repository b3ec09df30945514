"""tickcast trainer: history store, quantile LSTM, honest evaluation, ONNX export, registry.

A separate process from the streamer (which never imports torch). It may use the streamer's
pure core (``streamer.core``); the streamer never imports this package.
"""
