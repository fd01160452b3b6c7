package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"backupmx/internal/store"
)

// Client calls the admin API of one node.
type Client struct {
	BaseURL string       // e.g. "http://127.0.0.1:8025"
	Token   string       // bearer token; "" sends none
	HTTP    *http.Client // nil: http.DefaultClient
}

// Error is a non-2xx reply from the API. A 404 matches store.ErrNotFound
// under errors.Is.
type Error struct {
	Status  int    // HTTP status
	Message string // the reply's "error" field, or the status text
}

func (e *Error) Error() string { return fmt.Sprintf("%s (HTTP %d)", e.Message, e.Status) }

// Is makes errors.Is(err, store.ErrNotFound) true for a 404.
func (e *Error) Is(target error) bool {
	return target == store.ErrNotFound && e.Status == http.StatusNotFound
}

// Health checks that the node answers.
func (c *Client) Health(ctx context.Context) error {
	var v struct{ OK bool }
	return c.do(ctx, http.MethodGet, "/v1/health", nil, &v)
}

// List returns one page of deliveries matching f, starting after the cursor
// ("" for the first page), at most limit of them (0: the server's default).
// next is the cursor of the following page, "" after the last one.
func (c *Client) List(ctx context.Context, f store.Filter, after string, limit int) (items []Item, next string, err error) {
	q := filterQuery(f)
	if after != "" {
		q.Set("after", after)
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	var reply listReply
	if err := c.do(ctx, http.MethodGet, "/v1/queue", q, &reply); err != nil {
		return nil, "", err
	}
	return reply.Items, reply.Next, nil
}

// Deliveries returns every delivery of one message; a 404 *Error if unknown.
func (c *Client) Deliveries(ctx context.Context, id string) ([]Item, error) {
	var reply listReply
	if err := c.do(ctx, http.MethodGet, "/v1/queue/"+url.PathEscape(id), nil, &reply); err != nil {
		return nil, err
	}
	return reply.Items, nil
}

// Show copies the stored message to w as it streams in. Nothing is written
// if the message is unknown (a 404 *Error).
func (c *Client) Show(ctx context.Context, id string, w io.Writer) error {
	resp, err := c.send(ctx, http.MethodGet, "/v1/queue/"+url.PathEscape(id)+"/body", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(w, resp.Body); err != nil {
		return fmt.Errorf("reading message %s: %w", id, err)
	}
	return nil
}

// Flush makes matching unheld deliveries due now: those of one domain, of one
// message, or with both empty the whole queue. It returns how many.
func (c *Client) Flush(ctx context.Context, domain, id string) (int, error) {
	var reply struct{ Flushed int }
	err := c.do(ctx, http.MethodPost, "/v1/flush", filterQuery(store.Filter{ID: id, Domain: domain}), &reply)
	return reply.Flushed, err
}

// Delete removes a message without any DSN; a 404 *Error if unknown.
func (c *Client) Delete(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, "/v1/queue/"+url.PathEscape(id), nil, nil)
}

// Hold stops delivery of target (see Target); it returns how many deliveries changed.
func (c *Client) Hold(ctx context.Context, target string) (int, error) {
	return c.change(ctx, "/v1/hold", target)
}

// Release lets target (see Target) be delivered again, at once; it returns how
// many deliveries changed.
func (c *Client) Release(ctx context.Context, target string) (int, error) {
	return c.change(ctx, "/v1/release", target)
}

func (c *Client) change(ctx context.Context, path, target string) (int, error) {
	if target == "" {
		return 0, errors.New("admin: empty target")
	}
	var reply struct{ Changed int }
	err := c.do(ctx, http.MethodPost, path, filterQuery(Target(target)), &reply)
	return reply.Changed, err
}

// Target reads an operator's argument as a domain if it contains a dot, else
// as a queue id (16 characters of Crockford base32, never a dot).
func Target(s string) store.Filter {
	if strings.Contains(s, ".") {
		return store.Filter{Domain: s}
	}
	return store.Filter{ID: s}
}

func filterQuery(f store.Filter) url.Values {
	q := url.Values{}
	if f.ID != "" {
		q.Set("id", f.ID)
	}
	if f.Domain != "" {
		q.Set("domain", f.Domain)
	}
	return q
}

// do sends a request and decodes a JSON reply into out (nil: discard it).
func (c *Client) do(ctx context.Context, method, path string, q url.Values, out any) error {
	resp, err := c.send(ctx, method, path, q)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("%s %s: bad reply: %w", method, path, err)
	}
	return nil
}

// send returns a 2xx response, whose body the caller closes, or an error.
func (c *Client) send(ctx context.Context, method, path string, q url.Values) (*http.Response, error) {
	u := strings.TrimSuffix(c.BaseURL, "/") + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, nil)
	if err != nil {
		return nil, err
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	e := &Error{Status: resp.StatusCode, Message: strings.ToLower(http.StatusText(resp.StatusCode))}
	var reply errorReply
	if b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10)); json.Unmarshal(b, &reply) == nil && reply.Error != "" {
		e.Message = reply.Error
	}
	return nil, e
}
