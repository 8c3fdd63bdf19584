"""The clock: exact time, the timing model, the event engine, the round planner and the real-clock driver."""
