module github.com/nspawn-runner/nspawn-runner

go 1.26.0

require (
	github.com/alecthomas/kingpin/v2 v2.4.0
	github.com/containerd/btrfs/v2 v2.0.0
	golang.org/x/sys v0.50.0
	gopkg.in/yaml.v3 v3.0.1
)

require (
	github.com/alecthomas/units v0.0.0-20211218093645-b94a6e3cc137 // indirect
	github.com/xhit/go-str2duration/v2 v2.1.0 // indirect
)
