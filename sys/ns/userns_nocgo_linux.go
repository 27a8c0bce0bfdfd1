//go:build !cgo

package ns

// CanEnterUserNS is false: without cgo this binary lacks the constructor
// that joins a user namespace before the Go runtime starts.
const CanEnterUserNS = false
