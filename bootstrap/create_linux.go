package bootstrap

import (
	"context"
	"errors"
)

func (s *Store) create(ctx context.Context, name string, o CreateOptions) error {
	return errors.New("create: not yet")
}

func (s *Store) login(ctx context.Context, name string, argv []string) error {
	return errors.New("login: not yet")
}
