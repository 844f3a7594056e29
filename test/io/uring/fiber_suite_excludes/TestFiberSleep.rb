# Asserts the size of the CRuby test scheduler's private @waiting table,
# which a substituted scheduler does not have.
exclude(:test_sleep, "inspects CRuby's test scheduler internals (Scheduler#waiting)")
