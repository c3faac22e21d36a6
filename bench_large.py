"""predict.py on a large generated image: wall time and peak RSS, windowed and in memory (docs/large-images.md).

    python bench_large.py --size 20000 [--memory-sizes 2048 4096 8192] [--workdir DIR]

Each run is a child process of predict.py; see segkit.bench.large_image for what is generated and measured.
"""

from segkit.bench.large_image import main

if __name__ == "__main__":
    main()
