package recipients

import (
	"container/list"
	"sync"
	"time"
)

type cacheEntry struct {
	exists  bool
	expires time.Time
}

// lru is a bounded map: past cap entries, the least recently used goes.
// Expired entries stay until pushed out (they serve while the primary is down).
type lru struct {
	mu    sync.Mutex
	cap   int
	order *list.List // front = most recent; values are *lruItem
	items map[string]*list.Element
}

type lruItem struct {
	key string
	val cacheEntry
}

func newLRU(cap int) *lru {
	return &lru{cap: cap, order: list.New(), items: make(map[string]*list.Element)}
}

func (l *lru) get(key string) (cacheEntry, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	el, ok := l.items[key]
	if !ok {
		return cacheEntry{}, false
	}
	l.order.MoveToFront(el)
	return el.Value.(*lruItem).val, true
}

func (l *lru) put(key string, val cacheEntry) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if el, ok := l.items[key]; ok {
		el.Value.(*lruItem).val = val
		l.order.MoveToFront(el)
		return
	}
	l.items[key] = l.order.PushFront(&lruItem{key, val})
	for l.order.Len() > l.cap {
		last := l.order.Back()
		l.order.Remove(last)
		delete(l.items, last.Value.(*lruItem).key)
	}
}

func (l *lru) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.order.Len()
}
