"""Champion and challenger on live traffic: which version answers a request (routing), when the
challenger is rolled back (judge), and predicting with both (traffic)."""
