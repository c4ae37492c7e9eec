#!/usr/bin/env python3
"""Build a TorchServe model archive (.mar) of a size-agnostic VGG classifier: the command line over
``anysize_tools.archive.ArchiveSpec`` (every flag: --help).

    python scripts/build_archive.py --arch vgg16 --head fcn --weights imagenet
    python scripts/build_archive.py --arch vgg11 --head adaptive --weights random --name vgg11-test
    python scripts/build_archive.py --arch vgg16 --head fcn --weights ~/my_vgg16.pth --labels labels.txt
"""
import sys

from anysize_tools.archive import main

if __name__ == "__main__":
    sys.exit(main())
