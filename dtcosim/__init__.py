"""Command line of dtcosim: run, train, evaluate, reproduce, plot, bench."""
