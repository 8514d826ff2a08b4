"""Matplotlib figures for the Snakemake report, one module per stage."""
