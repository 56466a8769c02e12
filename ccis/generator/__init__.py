"""Generator stages: bootstrap the tiny base, train branches, synthesize data sets."""
