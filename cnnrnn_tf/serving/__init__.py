"""Serving: a TF Serving gRPC client and a local PredictionService server for development."""
