"""The notebook front: the IPython extension, magics, rendering, cell output routing,
the kernel and its kernelspec. The only layer that imports IPython."""
