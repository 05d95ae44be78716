"""One use case per command verb: core + ports -> a report object."""
