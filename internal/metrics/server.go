package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Paths the Server answers.
const (
	MetricsPath = "/metrics"
	HealthPath  = "/healthz"
)

// Server serves a Registry over HTTP: MetricsPath for Prometheus, and HealthPath, which answers
// 200 "ok" while the owner says it is ready (SetReady) and 503 otherwise: before the worker polls
// and once it is stopping.
type Server struct {
	ln    net.Listener
	srv   *http.Server
	ready atomic.Bool
	done  chan struct{}
}

// Listen binds addr (host:port; port 0 picks a free one, see Addr) at once, so that an address in
// use fails the caller at start, and serves in the background until Shutdown.
func Listen(addr string, reg *Registry, logger *slog.Logger) (*Server, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics endpoint: %w", err)
	}
	s := &Server{ln: ln, done: make(chan struct{})}
	mux := http.NewServeMux()
	mux.Handle("GET "+MetricsPath, promhttp.HandlerFor(reg.Gatherer(), promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		// A metric that fails to collect leaves the others scrapeable.
		ErrorHandling: promhttp.ContinueOnError,
	}))
	mux.HandleFunc("GET "+HealthPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !s.ready.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not ready")
			return
		}
		fmt.Fprintln(w, "ok")
	})
	s.srv = &http.Server{
		Handler: mux,
		// Scrapers send small requests; a client that trickles its headers is not one.
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("metrics endpoint stopped", "error", err)
		}
	}()
	return s, nil
}

// Addr is the address the server listens on, with the port it got.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// URL is the metrics URL on the listening address.
func (s *Server) URL() string { return "http://" + s.Addr() + MetricsPath }

// SetReady sets what HealthPath answers.
func (s *Server) SetReady(ready bool) { s.ready.Store(ready) }

// Shutdown stops accepting scrapes and waits for those in progress until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.SetReady(false)
	err := s.srv.Shutdown(ctx)
	select {
	case <-s.done:
	case <-ctx.Done():
	}
	if err != nil {
		return fmt.Errorf("metrics endpoint: shutdown: %w", err)
	}
	return nil
}
