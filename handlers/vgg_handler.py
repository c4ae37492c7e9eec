"""TorchServe's entry module for the archives: the handler class TorchServe instantiates.

TorchServe imports this file by name from the unpacked archive and instantiates a class defined in this very
module (ts.utils.util.list_classes_from_module skips imported ones), so the class is declared here; its code is
the `anysize` package that travels beside this file (anysize/handler.py).
"""

from anysize.handler import SizeAgnosticVGGHandler as _Handler


class SizeAgnosticVGGHandler(_Handler):
    """anysize.handler.SizeAgnosticVGGHandler, declared in the entry module for TorchServe to find."""
