"""DareFuseSlicer's library: data engine, network, pipeline and MRML scene adapters."""

__version__ = "0.1.0"
