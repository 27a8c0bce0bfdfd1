// Package flock holds advisory file locks: flock(2) on a lock file that is
// created when missing.
//
// An flock belongs to an open file description, so two opens of one file
// contend even inside one process, and the kernel drops the lock when the
// last descriptor of its holder closes (a SIGKILLed holder never leaves a
// stale lock). Locks are exclusive (LOCK_EX) or shared (LOCK_SH).
//
// A holder that is done with the lock's subject may remove the lock file
// (Lock.Remove). A waiter that opened the file before that removal then
// gets the lock on an inode no path names any more, while a newcomer
// creates a fresh file and locks that: two holders at once. So after each
// acquisition the lock checks that its path still names the inode it
// locked, and starts again when it does not.
//
// flock(2) cannot wait and watch a context at once: Wait polls with
// LOCK_NB, backing off from a few milliseconds to a tenth of a second.
package flock
