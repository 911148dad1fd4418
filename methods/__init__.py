"""Built-in method plugins, one file each (installed as ``mmdd_bench.methods``)."""
