# The test needs a scheduler whose loop ends before its fibers do (its #run
# raises).  Under the substitute, IO::Uring::Scheduler#close runs its own
# loop to the end after the suite's Scheduler#close, so the fiber's read
# waits for a writer that never comes.
exclude(:test_close_after_the_thread_ended_with_a_fiber_in_a_hook,
        "IO::Uring::Scheduler#close runs its loop to the end")
