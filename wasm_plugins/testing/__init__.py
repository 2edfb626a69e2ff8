"""Testing toolkit: Hypothesis strategies for errors, contexts and inputs (needs ``hypothesis``)."""
