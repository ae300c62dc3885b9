"""``clipwise bench`` apart from its command line: the load client (``load``) and the report (``report``)."""
