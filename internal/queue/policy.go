package queue

import "time"

// NextAttempt returns when a delivery that has now failed its attempts-th
// attempt (1-based) is tried again: intervals[attempts-1], the last interval
// repeating, counted from the failed attempt; never later than expires.
func NextAttempt(attempts int, failedAt, expires time.Time, intervals []time.Duration) time.Time {
	i := attempts - 1
	if i < 0 {
		i = 0
	}
	if i >= len(intervals) {
		i = len(intervals) - 1
	}
	next := failedAt.Add(intervals[i])
	if !expires.IsZero() && next.After(expires) {
		next = expires
	}
	return next
}
