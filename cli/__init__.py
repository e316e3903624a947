"""`exam-events`: one command for running and operating the system (see `exam-events --help`)."""
