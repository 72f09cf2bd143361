"""``python -m pipeline ...`` is the ``mine`` command; this is what torchrun launches:

    torchrun --nproc-per-node 8 -m pipeline run --layer all --images caltech/all --out all.h5
"""
from .cli import main

main()
