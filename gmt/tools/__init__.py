"""gmt's tools beside training and scoring (``gmt delta``, ``gmt merge``, ``gmt plot``), each a
module with a ``main(argv)``; scripts/ keeps a shim of each old script path."""
