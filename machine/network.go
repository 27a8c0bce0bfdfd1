package machine

import (
	"fmt"
	"path/filepath"

	"github.com/nspawn-runner/nspawn-runner/config"
	"github.com/nspawn-runner/nspawn-runner/network"
)

// network returns the private network of machines.
func (m *Manager) network() (*network.Network, error) {
	if m.Net != nil {
		return m.Net, nil
	}
	s, err := network.FromConfig(m.Config)
	if err != nil {
		return nil, err
	}
	m.Net = &network.Network{Settings: s, StateDir: filepath.Join(m.RunDir, "network"), Log: m.log()}
	return m.Net, nil
}

// attachNetwork gives a private machine its network (nothing for the
// other modes).
func (m *Manager) attachNetwork(l Layout, rec *Record, in *PlanInput) error {
	in.Network = rec.Network
	if rec.Network != config.NetworkPrivate {
		return nil
	}
	n, err := m.network()
	if err != nil {
		return err
	}
	a, err := n.Attach(l.Name, l.RunDir)
	if err != nil {
		return fmt.Errorf("private network: %w", err)
	}
	rec.Address = a.Addr.String()
	in.NetNS, in.ResolvConf = a.Namespace, a.ResolvConf
	if StartsInNetNS(*in) {
		// The machine's root has no capability over this namespace
		// (see StartsInNetNS): give it low ports and ping back.
		if err := network.ForUnprivilegedRoot(a.Namespace); err != nil {
			return fmt.Errorf("private network: %w", err)
		}
	}
	return nil
}

// detachNetwork removes what attachNetwork made (nothing to remove is
// fine).
func (m *Manager) detachNetwork(l Layout) error {
	n, err := m.network()
	if err != nil {
		return err
	}
	return n.Detach(l.Name, l.RunDir)
}
