"""Watching a model without labels: what its inputs and answers look like, and which
rules they break.

Pure, like ``compare``: the route's ``monitor:`` block (``spec``), the rules checked on
each watched request and answer (``invariants``), the features and the prediction read
from the bodies (``observe``), and the bound on how many distinct class and category
values ever become metric labels (``categories``). The writer process runs these on
parsed bodies, off the production path; the report runs the statistics in
``shadowproxy.stats.drift`` over the recorded rows.
"""
