"""The fuzz suite (issue 11): every entry point that takes untrusted bytes, fed mutated
valid inputs.  ``targets.ENTRY_POINTS`` is the table; ``campaign.run`` runs one entry
point; tests/test_fuzz.py runs a bounded number of each, bench/fuzz.py the campaign."""
