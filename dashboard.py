"""TensorBoard over every run, opening on their scores and losses (`make dashboard`):

    python dashboard.py [--logdir logs] [--port 6006] [any other tensorboard flag]

The Custom Scalars tab comes first: each run's validation scores, its losses and its learning rate; Time Series,
Images and HParams follow (docs/dashboard.md). Plain `tensorboard --logdir logs` shows the same tabs in
TensorBoard's own order.
"""

import sys

from segkit.tasks.dashboard import serve

if __name__ == "__main__":
    serve(sys.argv[1:])
