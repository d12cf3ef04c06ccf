"""``training_job_events``: training job events with level and source, exactly once.

The events API has no id and no stable cursor: events share timestamps, may appear late with an
older time than ones already read, and ``offset`` is an item index on some server versions and a
page index on others. So each poll re-reads a time window ``[floor, now + 1 day]`` in ascending
order, every page of it (:mod:`.pager`), and recognises events already read by their identity
(:mod:`.tracker`): ``(time, level, source, message, occurrence among identical ones at that
time)``. The cursor holds ``floor`` (the high-water time minus ``lookback``: older events count as
read) and the identities seen at or after it, bounded in number. Late events within ``lookback``
are caught; nothing repeats. A window unchanged since it was last read to its end (same
``total``, same first page) costs one request per poll, however many pages it holds.
:mod:`.model` is the response model, :mod:`.source` the plugin.
"""
