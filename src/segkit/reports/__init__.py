"""What segkit shows and writes of results: the evaluation report (evaluation), a sweep's summary (sweeps), the masks
and W&B table of evaluate and predict (predictions), and all drawing, in one place (drawing)."""
