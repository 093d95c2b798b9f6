"""progress: long jobs whose streamed progress survives reconnects, deaths and deploys."""
