"""ACCESS_PLATFORM and DMA: the vIOMMU mechanism, the 2015 DMA-API platforms, private memory and
canaries."""
