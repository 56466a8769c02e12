"""Generator stages: bootstrap the tiny base, train branches, synthesize data sets."""

# Here rather than in ``train`` so the command line knows the names without importing
# torch and diffusers.
GENERATORS = ("ccis", "controlnet", "unicontrolnet", "ccis_no_bmws", "ccis_no_taam")
